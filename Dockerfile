# The llm-meter binary (demo, mock provider, proxy) in a small image that runs as a non-root user.
#
#   docker build -t llm-meter .
#   docker run --rm -p 9464:9464 llm-meter demo --forever --metrics-listen 0.0.0.0:9464
#
# docker-compose.yml builds it for the demo stack.

# ---- build ------------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
# native-tls (reqwest) links OpenSSL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The binary target is named llm-meter whichever workspace package holds it.
RUN cargo build --release --locked --bin llm-meter \
 && install -D -m 0755 target/release/llm-meter /out/llm-meter

# ---- runtime ----------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 llm-meter \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin llm-meter
COPY --from=build /out/llm-meter /usr/local/bin/llm-meter
USER 10001:10001
# /metrics and /healthz (demo --metrics-listen, proxy --metrics-listen)
EXPOSE 9464
ENTRYPOINT ["llm-meter"]
CMD ["demo", "--forever", "--metrics-listen", "0.0.0.0:9464"]
