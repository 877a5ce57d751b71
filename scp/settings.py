"""The ``[scp]`` section of config.toml: who may send, on which port, with which limits."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class TlsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Serve DICOM over TLS (DICOM port becomes TLS-only).")
    cert_file: Path | None = Field(None, description="Server certificate chain (PEM).")
    key_file: Path | None = Field(None, description="Server private key (PEM).")
    client_ca_file: Path | None = Field(
        None, description="When set, clients must present a certificate signed by this CA."
    )

    @model_validator(mode="after")
    def _files_when_enabled(self) -> TlsSettings:
        if self.enabled:
            if self.cert_file is None or self.key_file is None:
                raise ValueError("cert_file and key_file are required when enabled = true")
            for path in (self.cert_file, self.key_file, self.client_ca_file):
                if path is not None and not path.is_file():
                    raise ValueError(f"file not found: {path}")
        return self


class ScpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ae_title: str = Field("TAMPERSCAN", description="Our AE title.")
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(11112, ge=0, le=65535, description="0 picks a free port (tests).")
    require_called_aet: bool = Field(
        True, description="Reject associations addressed to another AE title."
    )
    allowed_calling_aets: list[str] = Field(
        default_factory=list, description="Calling AE titles accepted; empty accepts any."
    )
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"],
        description="Peer addresses or networks (CIDR) accepted; empty accepts any.",
    )
    max_associations: int = Field(10, ge=1, le=1000)
    max_pdu_size: int = Field(
        262144, ge=0, description="Largest PDU we accept, bytes; 0 means unlimited."
    )
    acse_timeout_s: float = Field(30.0, gt=0)
    dimse_timeout_s: float = Field(30.0, gt=0)
    network_timeout_s: float = Field(60.0, gt=0)
    tls: TlsSettings = Field(default_factory=TlsSettings)

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        value = value.strip()
        if not 1 <= len(value) <= 16 or "\\" in value or not value.isprintable():
            raise ValueError("must be 1 to 16 printable characters without a backslash")
        return value

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aets(cls, values: list[str]) -> list[str]:
        return [cls._ae_title(v) for v in values]

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not an IP address or CIDR network") from exc
        return values

    def host_allowed(self, address: str) -> bool:
        if not self.allowed_hosts:
            return True
        try:
            peer = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        return any(peer in ipaddress.ip_network(net, strict=False) for net in self.allowed_hosts)
