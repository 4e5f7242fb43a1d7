#!/usr/bin/env bash
# The original DaemonSet script this project replaces, as the core-storm benchmark runs it: one
# `aws s3 cp` process per core, one core at a time, under the same keys ($CLUSTER_NAME/$NODE_NAME.file).
# Only `--no-progress` is added (it makes aws cheaper, not dearer); the endpoint and CA bundle come
# from AWS_ENDPOINT_URL_S3 / AWS_CA_BUNDLE in the environment.
inotifywait -m -e close_write --format '%f' "$LOCAL_PATH" | while read -r file; do
    aws s3 cp --no-progress "$LOCAL_PATH/$file" "s3://$S3_BUCKET/$CLUSTER_NAME/$NODE_NAME.$file" >/dev/null
    echo "[coredump] '$LOCAL_PATH/$file' has been uploaded to 's3://$S3_BUCKET/$CLUSTER_NAME/$NODE_NAME.$file'"
done
