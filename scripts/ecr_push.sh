#!/usr/bin/env bash
# Push the moodreel-{gateway,preprocess,model}:$IMAGE_TAG images built by `make images` to ECR.
# Needs: aws CLI v2 and docker; AWS_REGION (or the CLI's default region); AWS_ACCOUNT_ID is read
# from STS when unset. Repositories are created when missing (ecr:CreateRepository; scan on push,
# immutable tags). IAM permissions: docs/deploy.md, "ECR push policy".
set -euo pipefail

: "${IMAGE_TAG:?IMAGE_TAG is required (make ecr-push sets it to the git sha)}"
REGION="${AWS_REGION:-$(aws configure get region || true)}"
: "${REGION:?set AWS_REGION}"
ACCOUNT="${AWS_ACCOUNT_ID:-$(aws sts get-caller-identity --query Account --output text)}"
REGISTRY="${ACCOUNT}.dkr.ecr.${REGION}.amazonaws.com"
PREFIX="${ECR_REPOSITORY_PREFIX:-moodreel}"

if [[ "$IMAGE_TAG" == *-dirty ]]; then
  echo "refusing to push $IMAGE_TAG: commit your changes first (images are tagged with the git sha)" >&2
  exit 1
fi

aws ecr get-login-password --region "$REGION" | docker login --username AWS --password-stdin "$REGISTRY"

for service in gateway preprocess model; do
  repository="${PREFIX}-${service}"
  if ! aws ecr describe-repositories --region "$REGION" --repository-names "$repository" >/dev/null 2>&1; then
    aws ecr create-repository --region "$REGION" --repository-name "$repository" \
      --image-tag-mutability IMMUTABLE --image-scanning-configuration scanOnPush=true >/dev/null
    echo "created ECR repository $repository"
  fi
  remote="${REGISTRY}/${repository}:${IMAGE_TAG}"
  docker tag "moodreel-${service}:${IMAGE_TAG}" "$remote"
  docker push "$remote"
  echo "pushed $remote"
done
