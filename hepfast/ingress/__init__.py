"""Ingress: how packets enter the switch (UDP listening sockets today; TCP/TLS next)."""
