"""The jw command line and its HTTP client."""
