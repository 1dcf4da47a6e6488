"""The producer: the one place that knows how a job becomes tasks. Used by the CLI and the web app.

    from zoomq import producer
    job_id = producer.submit_zoom("an endless library", model="sd2-inpainting", keyframes=8)
    producer.status(job_id)["progress"]
"""

from zoomq.producer.producer import Producer, cancel, result, status, submit_image, submit_zoom

__all__ = ["Producer", "submit_image", "submit_zoom", "status", "cancel", "result"]
