from django.urls import path

from . import views

app_name = "demo"

urlpatterns = [
    path("", views.note_list, name="note-list"),
    path("notes/sqlalchemy/", views.note_list_sqlalchemy, name="note-list-sqlalchemy"),
    path("pools/", views.pools, name="pools"),
]
