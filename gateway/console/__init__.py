"""The built-in web console: one page (static/, no build step, nothing from a CDN) that shows the
models and their state, a Live panel fed by one server-sent-events stream, and a playground that
chats through /v1/chat/completions. ``endpoints`` serves it; ``live`` derives the Live figures
from the gateway's metrics."""
