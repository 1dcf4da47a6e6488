"""The infinite-zoom engine: keyframes by outpainting, interpolated segments, the stitched video.

Each unit (keyframe, segment, stitch) is a plain function that reads and writes files, so the
queue can run each on any machine; ``compose.render_zoom`` chains them in one process.
"""
