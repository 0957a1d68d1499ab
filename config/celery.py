"""The Celery app (the distributed mode's beat and worker).

``celery -A config worker`` runs the tasks; ``celery -A config beat`` sends
the periodic ones (``CELERY_BEAT_SCHEDULE`` in settings): the alarm
dispatcher every second, retention, the presence sweep and the usage roll-up.
The embedded mode needs neither: its alarms run in the ASGI process.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("dorm")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
