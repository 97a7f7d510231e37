"""Bridges between pd_fast and other libraries, one module per library (`diffusers`).

Each bridge imports its library inside its functions, so that importing a bridge (and
`import pd_fast`) works without the library installed; the library is needed only when a
function of the bridge is called. The arrows run one way: integrations -> core.
"""
