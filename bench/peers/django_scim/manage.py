#!/usr/bin/env python
"""Minimal Django project serving django-scim2 on Postgres, for the SCIM benchmark."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peerapp.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
