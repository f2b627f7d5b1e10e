from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="Export",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("rows", models.PositiveIntegerField()),
                ("task_id", models.CharField(blank=True, max_length=64)),
                ("path", models.CharField(blank=True, max_length=500)),
            ],
        ),
    ]
