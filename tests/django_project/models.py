from django.db import models


class Note(models.Model):
    """A row a task reads, to show a worker child uses the database."""

    text = models.CharField(max_length=100)
