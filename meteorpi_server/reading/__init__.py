"""Reading what is stored: searches and the camera registry."""
