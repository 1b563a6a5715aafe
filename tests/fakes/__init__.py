"""In-process fakes for tests and benchmarks: scripted SMTP peers, certificates, transports."""
