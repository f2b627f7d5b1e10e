from django.db import models


class Export(models.Model):
    """One CSV export someone asked for."""

    created_at = models.DateTimeField(auto_now_add=True)
    rows = models.PositiveIntegerField()
    task_id = models.CharField(max_length=64, blank=True)
    path = models.CharField(max_length=500, blank=True)
