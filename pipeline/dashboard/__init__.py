"""The live web dashboard (``logloom dashboard``; ``logloom up`` runs it too).

One page (``page.html``: plain JavaScript and inline SVG charts, no build step) fed by
server-sent events, and the JSON endpoints behind it. ``sampler`` reads Redis once per interval
for every open page, ``context`` holds what routes share, ``api`` has the page's routes and
``server`` the app, where other modules register routes of their own (see its docstring).
"""
