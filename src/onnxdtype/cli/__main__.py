from onnxdtype.cli.main import main

main()
