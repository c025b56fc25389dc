"""Demo views: list and create notes through the ORM, read them through poolkit's engine,
and show this process's pool figures."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods
from sqlalchemy import text

from django_poolkit import all_pool_stats, get_engine

from .forms import NoteForm
from .models import Note


@require_http_methods(["GET", "POST"])
def note_list(request: HttpRequest) -> HttpResponse:
    """The notes, newest first, with a form to add one."""
    form = NoteForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        form.save()
        return redirect("demo:note-list")
    return render(request, "demo/note_list.html", {
        "notes": Note.objects.all()[:50],
        "form": form,
        "pools": [stats.as_dict() for stats in all_pool_stats()],
    })


@require_GET
def note_list_sqlalchemy(request: HttpRequest) -> JsonResponse:
    """The same notes read through ``get_engine("default")``, as JSON."""
    with get_engine("default").connect() as connection:
        rows = connection.execute(
            text("SELECT id, title, created_at FROM demo_note ORDER BY created_at DESC, id DESC "
                 "LIMIT 50")
        ).all()
    return JsonResponse({"notes": [
        # SQLite hands timestamps back as text, PostgreSQL as datetimes.
        {"id": row.id, "title": row.title, "created_at": str(row.created_at)}
        for row in rows
    ]})


@require_GET
def pools(request: HttpRequest) -> JsonResponse:
    """This process's pool gauges and counters, per alias."""
    return JsonResponse({"pools": [stats.as_dict() for stats in all_pool_stats()]})
