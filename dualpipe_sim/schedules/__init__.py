"""Built-in schedule families; importing this package registers them all."""

from . import dualpipe, gpipe, one_f_one_b  # noqa: F401
