"""In-process fakes for tests and benchmarks: scripted SMTP and DNS peers, certificates, transports."""
