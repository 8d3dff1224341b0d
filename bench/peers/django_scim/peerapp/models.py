"""The models django-scim2's documentation asks for: a user and a group carrying its
SCIM mixins (scim_id, scim_external_id, scim_username / scim_display_name)."""

from django.contrib.auth.models import AbstractUser
from django.db import models
from django_scim.models import AbstractSCIMGroupMixin, AbstractSCIMUserMixin


class Group(AbstractSCIMGroupMixin):
    name = models.CharField(max_length=254, unique=True)


class User(AbstractSCIMUserMixin, AbstractUser):
    # django-scim2's group adapter adds members through ``group.user_set``.
    scim_groups = models.ManyToManyField(Group, blank=True)
