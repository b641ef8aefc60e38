//! Pure parsers for HTTP/1.x heads.
