package main

// Present only on feature/login-error: makes this branch's answers
// distinguishable from main and develop.
func init() {
	feature = "login-error"
}
