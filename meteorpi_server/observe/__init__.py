"""What the server shows about itself: health checks and Prometheus metrics."""
