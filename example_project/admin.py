"""The admin (/admin/): chat messages and pictures, with who posted them."""

from django.contrib import admin

from .models import ChatMessage, Picture


@admin.register(ChatMessage)
class ChatMessageAdmin(admin.ModelAdmin):
    list_display = ["created", "room", "name", "text"]
    list_filter = ["room"]
    search_fields = ["text", "name"]


@admin.register(Picture)
class PictureAdmin(admin.ModelAdmin):
    list_display = ["created", "room", "name", "uploaded_by", "width", "height"]
    list_filter = ["room"]
    exclude = ["image"]
