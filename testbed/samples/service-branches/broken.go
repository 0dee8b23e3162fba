package main

// Present only on broken-build: this file does not compile, on purpose, so a
// deployment of the branch fails at the `go build` stage.
func broken() int {
	return "not an int"
}
