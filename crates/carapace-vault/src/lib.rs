//! Secret backends (encrypted file, password managers, environment) and the scrubber.
