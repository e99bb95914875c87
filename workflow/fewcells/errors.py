"""The one exception type users see: a message naming the file or key and what is wrong."""


class FewcellsError(Exception):
    """A problem with the user's input or configuration, reported without a traceback."""
