from django.urls import path
from exports import views

urlpatterns = [
    path("exports", views.start_export),
    path("exports/<int:pk>", views.export_status),
]
