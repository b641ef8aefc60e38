//! Pairs responses with requests per connection.
