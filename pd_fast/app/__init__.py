"""What an application of the math core needs: the training loop (`training`), checkpoints
(`checkpoint`), built-in networks (`models`) and data (`data`), evaluation (`evaluation`), the
report (`report`) and the command-line job (`cli`, run as `python -m pd_fast`).

The arrows run one way: `pd_fast.app` imports the core (`pd_fast.schedules`, `pd_fast.sampling`,
`pd_fast.distillation`, ...), never the reverse. Import the submodules you need; this package
imports none of them itself, so that each stays as light as its own dependencies.
"""
