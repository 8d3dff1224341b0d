"""The webhook dispatcher: delivers identity events to the applications' webhook endpoints."""
