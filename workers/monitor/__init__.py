"""The monitor: watch a run live from its topics, as a tail reader that never disturbs workers.

`state.MonitorState` is what is known of one run, built from the envelopes read (no rich, no
torch); `view.render` draws it with rich; `app.monitor` reads the topics and drives the display.
Import the submodules you need: this package loads nothing.
"""
