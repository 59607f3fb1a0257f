//! Demo programs for apikey-cache; see `src/bin/`.
