from django.urls import path

from webhooks import api

urlpatterns = [
    path("webhooks/", api.EndpointList.as_view(), name="webhooks"),
    # str, not int: a malformed id must reach the view and get a JSON 404,
    # not Django's HTML "no such URL" page.
    path("webhooks/<str:pk>/", api.EndpointDetail.as_view(), name="webhook"),
]
