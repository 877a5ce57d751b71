"""The ``[scp]`` section of config.toml: who may send, on which port, with which limits."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scp.checks import relaxations


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
    receivers: int = Field(
        1,
        ge=1,
        le=64,
        description="Receiver processes sharing the port (SO_REUSEPORT); 1 receives in serve.",
    )
    max_associations: int = Field(
        10, ge=1, le=1000, description="Associations served at once (connections that sent one)."
    )
    max_pdu_size: int = Field(
        262144,
        ge=4096,
        le=64 * 1024 * 1024,
        description="Largest PDU we accept, bytes: advertised, and enforced after A-ASSOCIATE-RQ.",
    )
    association_request_timeout_s: float = Field(
        5.0, gt=0, description="Seconds a new connection has to deliver its A-ASSOCIATE-RQ."
    )
    max_connections_per_host: int = Field(
        10, ge=1, le=1000, description="TCP connections open at once from one address."
    )
    max_pending_connections: int = Field(
        32, ge=1, le=1000, description="Connections, all hosts, still waiting for A-ASSOCIATE-RQ."
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


# -- Results back to the PACS (issue 5): [reports], [delivery], [dicomweb] ----------------------


class ReportSettings(BaseModel):
    """What goes into the Structured Report (and optional key images) of each verdict."""

    model_config = ConfigDict(extra="forbid")

    send_not_scored: bool = Field(
        True, description="Also report verdicts that could not be scored, with the reason."
    )
    include_checked_regions: bool = Field(
        False, description="List every checked region, not only the flagged ones."
    )
    key_images: bool = Field(
        False, description="Add a Secondary Capture key image per flagged region."
    )
    series_number: int = Field(9901, ge=1, description="Series Number of our SR series.")
    institution_name: str = Field("", description="Institution Name written into the SR.")


class ClientTlsSettings(BaseModel):
    """TLS when we call a DICOM destination."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    ca_file: Path | None = Field(None, description="CA that signed the destination's certificate.")
    cert_file: Path | None = Field(None, description="Our client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="Our client key (mutual TLS).")

    @model_validator(mode="after")
    def _files_exist(self) -> ClientTlsSettings:
        if self.enabled:
            if (self.cert_file is None) != (self.key_file is None):
                raise ValueError("cert_file and key_file go together")
            for path in (self.ca_file, self.cert_file, self.key_file):
                if path is not None and not path.is_file():
                    raise ValueError(f"file not found: {path}")
        return self


def _check_destination_name(value: str) -> str:
    if not 1 <= len(value) <= 64 or not value.replace("-", "").replace("_", "").isalnum():
        raise ValueError("must be 1 to 64 letters, digits, '-' or '_'")
    return value


class DicomDestination(BaseModel):
    """A DICOM peer (the PACS) that receives our reports by C-STORE."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique name; deliveries are recorded under it.")
    ae_title: str = Field(description="The destination's AE title.")
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str = Field("TAMPERSCAN", description="Our AE title when calling.")
    timeout_s: float = Field(30.0, gt=0)
    tls: ClientTlsSettings = Field(default_factory=ClientTlsSettings)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_destination_name(value)

    @field_validator("ae_title", "calling_ae_title")
    @classmethod
    def _aets(cls, value: str) -> str:
        return ScpSettings._ae_title(value)


class DicomwebDestination(BaseModel):
    """A DICOMweb server that receives our reports by STOW-RS."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique name; deliveries are recorded under it.")
    url: str = Field(description="Base URL of the DICOMweb service; we POST to <url>/studies.")
    auth_header: str = Field(
        "", description='Authorization header value, e.g. "Bearer ..."; empty sends none.'
    )
    timeout_s: float = Field(30.0, gt=0)
    verify_tls: bool = Field(True, description="Check the server's HTTPS certificate.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_destination_name(value)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class DeliverySettings(BaseModel):
    """Where reports go, and how hard we try before a delivery shows as failed."""

    model_config = ConfigDict(extra="forbid")

    dicom: list[DicomDestination] = Field(default_factory=list)
    dicomweb: list[DicomwebDestination] = Field(default_factory=list)
    max_attempts: int = Field(8, ge=1, description="Attempts before a delivery shows as failed.")
    backoff_initial_s: float = Field(10.0, gt=0, description="Wait after the first failure.")
    backoff_max_s: float = Field(3600.0, gt=0, description="Longest wait between attempts.")
    poll_interval_s: float = Field(2.0, gt=0, description="How often the queue is checked.")

    @model_validator(mode="after")
    def _unique_names(self) -> DeliverySettings:
        names = [d.name for d in self.dicom] + [d.name for d in self.dicomweb]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique: {', '.join(duplicates)}")
        return self

    def destination_names(self) -> list[str]:
        return [d.name for d in self.dicom] + [d.name for d in self.dicomweb]


class DicomwebSettings(BaseModel):
    """The STOW-RS endpoint a DICOMweb-only PACS forwards studies to."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Serve POST /dicom-web/studies on the HTTP server.")
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"],
        description="Client addresses or networks (CIDR) accepted; empty accepts any.",
    )
    bearer_token: str = Field("", description="When set, requests must carry this token.")
    max_request_mb: int = Field(2048, ge=1, description="Largest request body accepted.")

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, values: list[str]) -> list[str]:
        return ScpSettings._hosts(values)

    def host_allowed(self, address: str) -> bool:
        return ScpSettings.model_construct(allowed_hosts=self.allowed_hosts).host_allowed(address)


class ValidationSettings(BaseModel):
    """The ``[validation]`` section: the checks every received instance must pass."""

    model_config = ConfigDict(extra="forbid")

    relax: list[str] = Field(
        default_factory=list,
        description="Checks not enforced, for modalities that need it; empty: all enforced.",
    )

    @field_validator("relax")
    @classmethod
    def _relaxable(cls, values: list[str]) -> list[str]:
        relaxations(values)
        return values
