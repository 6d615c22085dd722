"""chatcore: the engine both front-ends share (settings, conversation, tokens, usage, provider, turn, sessions).

Importing it does nothing but define things: no file is read, no client is built, and no
terminal or Telegram library is imported. Front-ends import its modules directly.
"""

__version__ = "0.2.0"
