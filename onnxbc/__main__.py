from onnxbc.cli import main

main()
