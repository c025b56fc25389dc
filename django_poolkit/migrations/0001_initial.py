"""models.Dashboard: no table (``managed = False``), so no SQL; it carries the
``view_dashboard`` permission, which ``migrate`` creates."""

from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Dashboard",
            fields=[
                ("id", models.AutoField(auto_created=True, primary_key=True, serialize=False,
                                        verbose_name="ID")),
            ],
            options={
                "verbose_name": "connection pool dashboard",
                "permissions": [("view_dashboard", "Can view the connection pool dashboard")],
                "managed": False,
                "default_permissions": (),
            },
        ),
    ]
