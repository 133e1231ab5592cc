"""A local HTTP server speaking the OpenAI and Anthropic batch APIs (tests, demos).

`server.SandboxServer` (the in-process server; re-exports `Faults`, `SyntheticResponder`,
`ReplayResponder`, `Limits`, `StateError`), `faults.Faults` (fault injection), `responders` (who
answers), `persistence` (state kept in a directory across restarts: `state_dir=`), `cli`
(`routellm-batch sandbox serve [--state-dir D]`). Standard library only, pandas inside the replay responder.
"""
