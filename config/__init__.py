# The Celery app loads with Django, so `shared_task` binds to it (cookiecutter-django).
from config.celery import app as celery_app

__all__ = ["celery_app"]
