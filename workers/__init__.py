"""Workers: independent async services that follow runs on the bus and steer them back.

`workers.runtime.run_worker` drives one kind (`workers.kinds.KINDS`) on one run or on every
run; a kind is a `workers.base.Worker` subclass that handles a run's events through a
`workers.context.RunContext`. Import the submodules you need: this package loads nothing.
"""
