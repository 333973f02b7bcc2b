"""The machinery behind the nox sessions: provisioning interpreters and
Debian roots (provision), deriving and proving each wheel's headers
(headers), and building and checking the wheels (wheels)."""
