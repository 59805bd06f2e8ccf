"""Hand-written rivals that benchmarks measure sixfold against (servers, not benchmarks: `make
bench` runs only the modules directly in benchmarks/)."""
