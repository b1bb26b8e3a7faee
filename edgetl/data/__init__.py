"""Training data: where images come from (`sources`: digits, cifar10, ImageFolders, splits), what
`check-data` finds in them (`check`, torch-free), the decoded-tensor cache (`cache`) and the batch
feeds training draws from (`feed`). Importing the package imports nothing; `check` stays torch-free."""
