"""mkd: a daemon that runs MimicKit training jobs under supervision."""
