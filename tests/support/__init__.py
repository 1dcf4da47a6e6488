"""What the tests share: plain helper modules (``support.cli``, ``support.images``, ``support.browser``,
``support.netns``, ...) imported by name, and pytest plugins (``support.models``, ``support.cluster``,
``support.s3server``, ``support.webapp``, ``support.prerequisites``) that conftest.py registers."""
