//! Local `.gitlab-ci.yml` files for `keyhole-runner exec` and `render`.
