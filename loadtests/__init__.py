"""Load tests (Locust scenario) and the side-by-side benchmark harness."""
