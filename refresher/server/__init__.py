"""The daemon's HTTP server: health, metrics, onboarding, token API and signing proxy."""
