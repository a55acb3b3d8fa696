"""Applications built on the library: the CLI's presets, the demos and their reports.

The library (``fastmine.*`` outside this package) never imports from here.
"""
